from trio_gateway.cli import run

run()
