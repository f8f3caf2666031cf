"""Typed clients of the suite's services, over their protobuf contracts only:
what one service asks of another, written once for every caller.

users  the users service: profiles, ids by email, matches and counts of a
       condition, and the writes of the workflows' built-in tasks
"""
