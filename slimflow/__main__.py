from slimflow.cli import main

main()
