from posecore.cli import main

main()
