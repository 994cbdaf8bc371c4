"""The studio: a local web app over run folders (runs, launch, reports, blind review, data, chat, monitor)."""
