# A base of child.py that has a base itself (a string, not a list).
_base_ = './base_seed.py'
optimizer = dict(type='SGD', lr=0.1, momentum=0.9)
