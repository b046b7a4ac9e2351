from edgelake.cli import main

main()
