"""minigpt/studies/lr_table.py: the table schedule (knots and values) the loss prediction's optimizer writes."""

from __future__ import annotations

import pytest

from minigpt.errors import UserError
from minigpt.schedules import build_schedule, schedule_from_config

# minigpt.studies.lr_table registers "table" when imported: each test here leaves the registry as it was
pytestmark = pytest.mark.usefixtures("table_schedule_stays_here")


def test_the_table_schedule_interpolates_its_knots_and_refuses_bad_tables():
    import minigpt.studies.lr_table  # noqa: F401  (registers "table")

    s = schedule_from_config({"name": "table", "knots": [0, 0.5, 1.0], "values": [0.1, 1.0, 0.0]}, 10, None)
    assert [round(s(t), 6) for t in range(10)] == [0.1, 0.28, 0.46, 0.64, 0.82, 1.0, 0.8, 0.6, 0.4, 0.2]
    with pytest.raises(UserError, match="must increase strictly"):
        build_schedule("table", 10, knots=(0, 5, 5), values=(1.0, 0.5, 0.1))
    with pytest.raises(UserError, match="same length"):
        build_schedule("table", 10, knots=(0, 5), values=(1.0,))
