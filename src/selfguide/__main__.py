from selfguide.cli import main

main()
