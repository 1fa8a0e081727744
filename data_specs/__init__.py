"""JSON Schemas of every table neurocast reads or writes; see README.md here."""
