"""Facility lockdown: pure state machine, records, asyncio runner, incident reports."""
