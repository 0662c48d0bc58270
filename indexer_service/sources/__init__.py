"""The stores of OpenCode records, each a `source.Source`: only the service and the CLI pick one."""
