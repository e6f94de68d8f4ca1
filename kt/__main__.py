from kt.cli import main

main()
