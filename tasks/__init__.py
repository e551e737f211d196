"""The Celery app, its tasks, job state in Redis, the tensor store and the reducer."""
