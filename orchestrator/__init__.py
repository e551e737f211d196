"""The command line: submit, status, report, selftest; the embedded local cluster; progress and reports."""
