"""A real OTLP trace receiver on loopback for tests, as a collector would be: the gRPC `TraceService` and the
HTTP/protobuf `POST /v1/traces`, each decoding `ExportTraceServiceRequest` with opentelemetry-proto and
keeping every span it was sent, with the service that sent it and how it came.

It runs as a process of its own (`python -m tests.services.otlp_receiver SPANS_FILE`), so gRPC's threads and
poller never live in the test process: a process that forks after starting them (every test that launches an
API or a worker does) hands its child a broken poller."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from api.processes import die_with_parent
from tests.services.settings import REPO_ROOT


@dataclass(frozen=True)
class Span:
    service: str  # the resource's service.name
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_id: str | None
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    start_ns: int
    end_ns: int
    transport: str  # "grpc" | "http/protobuf" (| "console": read from a ConsoleSpanExporter's output)

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


class Receiver:
    """Both transports at once: `grpc_endpoint` and `http_endpoint` (the base URL: the exporter adds
    `/v1/traces`). `with Receiver(tmp_path / "spans.jsonl") as otlp: ... otlp.spans`."""

    def __init__(self, spans_file: Path):
        self.spans_file = Path(spans_file)

    def __enter__(self) -> Receiver:
        self.spans_file.write_text("")
        self.process = subprocess.Popen([sys.executable, "-m", "tests.services.otlp_receiver", str(self.spans_file)],
                                        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                        preexec_fn=die_with_parent())  # fmt: skip
        grpc_port, http_port = self.process.stdout.readline().split()  # once both listen
        self.grpc_endpoint = f"http://127.0.0.1:{grpc_port}"
        self.http_endpoint = f"http://127.0.0.1:{http_port}"
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)

    @property
    def spans(self) -> list[Span]:
        lines = self.spans_file.read_text().splitlines()
        return [Span(**json.loads(line)) for line in lines if line.endswith("}")]  # a line being written: later

    def wait_for(self, predicate, timeout: float = 30) -> list[Span]:
        """The spans once `predicate(spans)` holds; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate(spans := self.spans):
            assert time.monotonic() < deadline, f"the receiver never got them: {sorted({s.name for s in spans})}"
            time.sleep(0.2)
        return spans


def serve(spans_file: Path) -> None:
    """Listen on two free loopback ports, print them ("GRPC HTTP"), append each span received to `spans_file`
    as a JSON line, until terminated."""
    from concurrent import futures
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
        TraceServiceServicer,
        add_TraceServiceServicer_to_server,
    )

    lock = threading.Lock()

    def keep(request: ExportTraceServiceRequest, transport: str) -> None:
        lines = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(json.dumps(asdict(Span(
                        service=attributes.get("service.name", ""), name=span.name, trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(), parent_id=span.parent_span_id.hex() or None, kind=span.kind,
                        start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano, transport=transport,
                    ))) + "\n")  # fmt: skip
        with lock, spans_file.open("a") as out:
            out.write("".join(lines))

    class Service(TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
            keep(request, "grpc")
            return ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_TraceServiceServicer_to_server(Service(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(404 if self.path != "/v1/traces" else 415)
                return
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            keep(request, "http/protobuf")
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(grpc_port, http.server_address[1], flush=True)
    http.serve_forever()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
