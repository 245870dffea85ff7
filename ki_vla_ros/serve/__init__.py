"""The policy server (`ki-vla serve`) and its client (`model.remote`), speaking openpi's
websocket + msgpack protocol. ROS-free: server.py, client.py, protocol.py, layouts.py."""
