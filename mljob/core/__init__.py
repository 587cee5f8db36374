"""The pure core: names, validation, rendering, the rulebook, the planner, status. No I/O, no clock."""
