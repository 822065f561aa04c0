"""The web demo: ``python -m research.pmg.demo`` serves one page on localhost where a person picks a simulated user
(or clicks stickers into a history), a target, and sees the keywords, the non-personalized image and PMG's
candidates with their scores.

server.py is a standard-library HTTP server (JSON endpoints over :class:`research.pmg.api.PMG`); static/ holds the
page (plain HTML, CSS and JavaScript, nothing fetched from elsewhere). README.md says why it is not Gradio.
"""
