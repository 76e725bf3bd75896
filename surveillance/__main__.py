from surveillance.cli import main

main()
