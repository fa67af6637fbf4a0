"""Community and moderation (issue 13): profiles, categories, follows and
go-live alerts, live chat, comments, likes, reports, the moderation queue and
the creator dashboard. One module per concept; `routes.py` wires them into
the signaling app."""
