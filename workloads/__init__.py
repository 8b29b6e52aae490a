"""Test data: seeded, realistic events for every registry topic (`generator`) and a producer (`produce`)."""
