"""Modbus relay/IO boards over pymodbus (the only package that imports pymodbus)."""
