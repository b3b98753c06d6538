"""civic.band look-alike test harness: real Datasette servers with fault injection."""
