"""Live cameras: sources, online scoring, the event store and alerts (`callm watch`)."""
