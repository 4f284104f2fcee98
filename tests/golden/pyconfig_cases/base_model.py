# A base of child.py: values the child merges into or replaces.
model = dict(type='Net', backbone=dict(depth=50, norm=dict(type='BN')), head=dict(channels=[256, 256], act='relu'))
schedule = dict(max_epochs=100, milestones=[60, 90])
pipeline = [dict(type='Load'), dict(type='Flip', prob=0.5)]
size = (192, 256)
