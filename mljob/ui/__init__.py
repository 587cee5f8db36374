"""``mljob ui``: one read-only web page for every MLJob in a cluster, whatever its framework.

:mod:`mljob.ui.view` turns the objects a watch delivered into what the pages show (pure, tested without a
server); :mod:`mljob.ui.server` is the aiohttp edge: the watches, the pages, and the live-update stream.
"""
