from supervisor.cli import finish, main

finish(main())
