from flowpoint_cli import main

main()
