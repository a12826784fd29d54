from prunequant_cli.cli import main

main()
