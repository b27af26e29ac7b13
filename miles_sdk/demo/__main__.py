import sys

from miles_sdk.demo.run import main

sys.exit(main())
