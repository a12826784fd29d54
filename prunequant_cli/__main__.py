from prunequant_cli.entry import main

main()
