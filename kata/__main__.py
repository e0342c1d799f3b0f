from kata.cli import main

main()
