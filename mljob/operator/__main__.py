"""``python -m mljob.operator``: the operator without the CLI's dependencies."""

from mljob.operator.main import main

main()
