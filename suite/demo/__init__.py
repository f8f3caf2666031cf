"""`lifecycle demo`: a realistic product on the suite, in a couple of minutes.

catalog     the workflows (BPMN files beside it), segments and triggers it sets up
clients     stubs of the five services
simulation  users and their behaviour over simulated days, sent as events
report      the stage funnel and daily metrics, as tables
run         the command: start the suite if needed, set up, replay, report
"""
