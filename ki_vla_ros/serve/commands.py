"""`ki-vla serve`: load a checkpoint and serve it over websockets (server.py)."""

from __future__ import annotations

import argparse
import logging
import sys

from ki_vla_ros.serve.server import DEFAULT_MAX_MESSAGE_BYTES


def add_subcommands(sub) -> None:
    serve = sub.add_parser("serve", help="serve a checkpoint over websockets (openpi's policy-server protocol)",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    serve.add_argument("--checkpoint", required=True,
                       help="checkpoint directory, 'demo' (the shipped demo checkpoint) or 'tiny' (random "
                            "weights sized by --config)")
    serve.add_argument("--config", default="single_arm",
                       help="robot config, only used to size --checkpoint tiny and for model.compile/cuda_graph")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (loopback unless told otherwise)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port; 0 = any free port")
    serve.add_argument("--token", default=None,
                       help="shared token; clients must send 'Authorization: Api-Key <token>'")
    serve.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                       help="largest request accepted; larger ones close the connection (code 1009)")
    serve.add_argument("--max-batch", type=int, default=8, help="most requests run in one forward pass")
    serve.add_argument("--batch-wait-ms", type=float, default=5.0,
                       help="longest wait for more clients' requests to fill a batch")
    serve.add_argument("--openpi-metadata", action="store_true",
                       help="behave like an openpi server on the wire: empty metadata (no model sizes), replies "
                            "with actions and server_timing only (to test clients made for openpi servers)")
    serve.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:N")
    serve.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads; 0 = auto")
    serve.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from ki_vla_ros.runtime.config import load_robot_config
    from ki_vla_ros.runtime.model_loading import load_predictor, set_torch_threads
    from ki_vla_ros.serve.server import PolicyServer, ServerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    set_torch_threads(args.torch_threads)
    predictor = load_predictor(load_robot_config(args.config), checkpoint=args.checkpoint, device=args.device)
    predictor.warmup()
    config = ServerConfig(host=args.host, port=args.port, token=args.token, max_message_bytes=args.max_message_bytes,
                          max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                          openpi_metadata=args.openpi_metadata)

    def ready(server: PolicyServer) -> None:
        print(f"serving on ws://{config.host}:{server.port} (horizon {predictor.horizon}, action_dim "
              f"{predictor.action_dim}, state_dim {predictor.state_dim}, {predictor.num_cameras} camera slots"
              f"{', token required' if config.token else ''})", flush=True)

    try:
        PolicyServer(predictor, config).serve_forever(on_ready=ready)
    except KeyboardInterrupt:
        pass
    except OSError as error:
        print(f"ki-vla serve: cannot listen on {config.host}:{config.port}: {error}", file=sys.stderr)
        return 2
    return 0
