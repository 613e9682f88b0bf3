"""Many replicas of the server: `entropy-serve serve-replicas` runs N `entropy-serve serve`
processes behind Ray Serve (ray_app.py), forwarding requests to them as bytes
(forwarding.py). Needs the `replicas` extra (Ray Serve)."""
