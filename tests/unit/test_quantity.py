"""Quantities parse exactly as the official client (and so the API server) parses them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from kubernetes.utils import parse_quantity as official

from mljob.core.quantity import parse_quantity

SAMPLES = ["2", "500m", "1.5", "1Gi", "512Mi", "3Ki", "1e3", "2E-2", "100M", "7k", "250u", "9n", "1.5Ti", ".5", 4, 2.5]


@pytest.mark.parametrize("value", SAMPLES)
def test_parses_as_the_official_client_does(value):
    assert parse_quantity(value) == Decimal(official(value))


@pytest.mark.parametrize("value", ["", "two", "1GB", "1.2.3", "Gi", "--1", True, None, [1]])
def test_refuses_what_is_not_a_quantity(value):
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(value)
