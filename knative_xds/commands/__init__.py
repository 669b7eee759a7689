"""The subcommands of `knative-xds` (cli.py builds the parser and dispatches).

Each module has `add_parser(sub)` and `run(args)`. A command imports what it runs
when it runs, so that parsing the command line loads no gRPC, no Kubernetes
client and no translation of its own: `bootstrap` and `--help` stay quick.
"""
