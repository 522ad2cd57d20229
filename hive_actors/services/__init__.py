"""The hive's core services, each an actor on its own store connection.

* ``base``      ServiceActor: a service on its own store connection, found through the Directory
* ``directory`` the Directory: the live instance of each service and agent, by name
* ``bell``      the hive's bell: rung after a commit so event followers read what changed
* ``store``     StoreActor: owns the sqlite file (lock, migration, start-up recovery, pruning)
* ``bus``       BusActor: the message bus (send, deliver, acknowledge)
* ``approvals`` ApprovalQueueActor: the one approval queue and its decisions
"""
