"""The command line `c360`: one thin command per stage, over the layers below (`c360.cli.main` is the app)."""
