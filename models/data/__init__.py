"""Data: load, validate (Great Expectations), clean, split and fingerprint."""
