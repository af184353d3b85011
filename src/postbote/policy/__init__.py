"""Policy: the decisions SMTP itself leaves open — who may relay, which recipients
exist, which senders a user may use. Each check is a function of its inputs and the
directory; the SMTP backend (app.py) runs them per phase."""
