"""The command line over the cluster: thin commands, the job lifecycle, the embedded cluster, and the reports."""
