"""Calibration profiles: fitted (or spec-default) efficiencies the cost model runs on."""
