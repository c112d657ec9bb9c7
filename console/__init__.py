"""The web console (`shoal console`): queues, jobs, failure history and actions in a browser."""
