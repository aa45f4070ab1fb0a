"""The fleet simulator: scenarios, engines, timelines and reports."""
