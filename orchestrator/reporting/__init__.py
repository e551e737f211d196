"""A job's report: its numbers (data) shown on the console, in markdown and in plots, written by one writer."""
