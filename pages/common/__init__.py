"""What the dashboard's pages share, in three parts: `settings` (which workspace every page
shows, and the sidebar's form), `reads` (the library's answers, cached by what identifies
them) and `job_panel` (the progress of background jobs); `layout` holds the page paths and
the parts every page lays out alike (title, synthetic-data note, tables)."""
