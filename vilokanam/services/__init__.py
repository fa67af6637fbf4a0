"""Local servers the platform owns in development and in tests: Postgres, Redis
and the chopsticks chain. `vilokanam dev` and the pytest harness both use these,
so what a developer runs is what the tests run."""
