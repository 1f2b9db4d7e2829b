"""The gRPC face of the test double (tests/doubles/qdrant_rest_double.py): Qdrant's gRPC
services, for the calls clipsearch makes with `--grpc`, over the same engine.

Each call is turned into the REST request the double already serves (with
qdrant-client's own gRPC <-> REST conversions), so both protocols share one engine,
one API key check and one list of failures asked for. Like the REST face it checks the
client side only: the real server's gRPC is what `make test-server` runs against.
"""

from __future__ import annotations

from concurrent import futures

import grpc as grpc_lib
from qdrant_client import grpc
from qdrant_client.conversions.conversion import GrpcToRest, RestToGrpc

from doubles.qdrant_rest_double import NotFound, QdrantRestDouble

_STATUS_CODES = {401: grpc_lib.StatusCode.UNAUTHENTICATED, 429: grpc_lib.StatusCode.RESOURCE_EXHAUSTED,
                 503: grpc_lib.StatusCode.UNAVAILABLE}


def _json(model) -> dict:
    return model.model_dump(mode="json", exclude_none=True)


class _Calls:
    """Admission, the call to the REST handler, and errors as gRPC statuses."""

    def __init__(self, double: QdrantRestDouble):
        self.double = double

    def __call__(self, context, handler, name, body: dict):
        key = dict(context.invocation_metadata()).get("api-key")
        refused = self.double.admit(key)
        if refused == 401:
            context.abort(grpc_lib.StatusCode.UNAUTHENTICATED, "Invalid api-key")
        if refused is not None:
            context.abort(_STATUS_CODES.get(refused, grpc_lib.StatusCode.UNAVAILABLE),
                          "a failure the test asked for")
        try:
            return self.double.call(handler, name, body)
        except NotFound as exc:
            context.abort(grpc_lib.StatusCode.NOT_FOUND, f"Not found: {exc}")
        except Exception as exc:
            context.abort(grpc_lib.StatusCode.INVALID_ARGUMENT, f"Bad request: {exc}")


class _Qdrant(grpc.QdrantServicer):
    def __init__(self, calls: _Calls):
        self.calls = calls

    def HealthCheck(self, request, context):
        info = self.calls(context, lambda name, body: self.calls.double.engine.info(), None, {})
        return RestToGrpc.convert_health_check_reply(info)


class _Collections(grpc.CollectionsServicer):
    def __init__(self, calls: _Calls):
        self.calls = calls
        self.double = calls.double

    def CollectionExists(self, request, context):
        exists = self.calls(context, lambda name, body: self.double.engine.collection_exists(name),
                            request.collection_name, {})
        return grpc.CollectionExistsResponse(result=grpc.CollectionExists(exists=exists))

    def Get(self, request, context):
        info = self.calls(context, self.double._get_collection, request.collection_name, {})
        return grpc.GetCollectionInfoResponse(result=RestToGrpc.convert_collection_info(info))

    def Create(self, request, context):
        body = {"vectors": _json(GrpcToRest.convert_vectors_config(request.vectors_config))}
        for field in ("shard_number", "replication_factor", "write_consistency_factor"):
            if request.HasField(field):
                body[field] = getattr(request, field)
        if request.HasField("hnsw_config"):
            body["hnsw_config"] = _json(GrpcToRest.convert_hnsw_config_diff(request.hnsw_config))
        if request.HasField("quantization_config"):
            body["quantization_config"] = _json(GrpcToRest.convert_quantization_config(request.quantization_config))
        if request.metadata:
            body["metadata"] = GrpcToRest.convert_payload(request.metadata)
        result = self.calls(context, self.double._create_collection, request.collection_name, body)
        return grpc.CollectionOperationResponse(result=bool(result))

    def Update(self, request, context):
        body = {}
        if request.HasField("optimizers_config"):
            body["optimizers_config"] = _json(GrpcToRest.convert_optimizers_config_diff(request.optimizers_config))
        if request.metadata:
            body["metadata"] = GrpcToRest.convert_payload(request.metadata)
        result = self.calls(context, self.double._update_collection, request.collection_name, body)
        return grpc.CollectionOperationResponse(result=bool(result))

    def Delete(self, request, context):
        result = self.calls(context, self.double._delete_collection, request.collection_name, {})
        return grpc.CollectionOperationResponse(result=bool(result))

    def List(self, request, context):
        result = self.calls(context, self.double._list_collections, None, {})
        return grpc.ListCollectionsResponse(
            collections=[RestToGrpc.convert_collection_description(c) for c in result.collections])

    def ListAliases(self, request, context):
        result = self.calls(context, self.double._list_aliases, None, {})
        return grpc.ListAliasesResponse(aliases=[RestToGrpc.convert_alias_description(a) for a in result.aliases])

    def ListCollectionAliases(self, request, context):
        result = self.calls(context, self.double._collection_aliases, request.collection_name, {})
        return grpc.ListAliasesResponse(aliases=[RestToGrpc.convert_alias_description(a) for a in result.aliases])

    def UpdateAliases(self, request, context):
        body = {"actions": [_json(GrpcToRest.convert_alias_operations(a)) for a in request.actions]}
        result = self.calls(context, self.double._update_aliases, None, body)
        return grpc.CollectionOperationResponse(result=bool(result))


def _with_payload(request) -> object:
    return GrpcToRest.convert_with_payload_selector(request.with_payload) if request.HasField("with_payload") else None


def _with_vector(request) -> object:
    return GrpcToRest.convert_with_vectors_selector(request.with_vectors) if request.HasField("with_vectors") else None


def _record(record) -> grpc.RetrievedPoint:
    # Asked without payload, the engine leaves it None, which the converter cannot take;
    # a real server answers with an empty map.
    if record.payload is None:
        record = record.model_copy(update={"payload": {}})
    return RestToGrpc.convert_record(record)


def _updated(result) -> grpc.PointsOperationResponse:
    return grpc.PointsOperationResponse(result=grpc.UpdateResult(operation_id=result["operation_id"],
                                                                 status=grpc.UpdateStatus.Completed))


class _Points(grpc.PointsServicer):
    def __init__(self, calls: _Calls):
        self.calls = calls
        self.double = calls.double

    def Upsert(self, request, context):
        body = {"points": [_json(GrpcToRest.convert_point_struct(p)) for p in request.points]}
        return _updated(self.calls(context, self.double._upsert, request.collection_name, body))

    def Get(self, request, context):
        body = {"ids": [GrpcToRest.convert_point_id(i) for i in request.ids],
                "with_payload": _with_payload(request), "with_vector": _with_vector(request)}
        records = self.calls(context, self.double._retrieve, request.collection_name, body)
        return grpc.GetResponse(result=[_record(r) for r in records])

    def Delete(self, request, context):
        selector = request.points
        if selector.WhichOneof("points_selector_one_of") == "points":
            body = {"points": [GrpcToRest.convert_point_id(i) for i in selector.points.ids]}
        else:
            body = {"filter": _json(GrpcToRest.convert_filter(selector.filter))}
        return _updated(self.calls(context, self.double._delete, request.collection_name, body))

    def Count(self, request, context):
        body = {"filter": _json(GrpcToRest.convert_filter(request.filter))} if request.HasField("filter") else {}
        result = self.calls(context, self.double._count, request.collection_name, body)
        return grpc.CountResponse(result=RestToGrpc.convert_count_result(result))

    def Scroll(self, request, context):
        body = {"with_payload": _with_payload(request), "with_vector": _with_vector(request)}
        if request.HasField("filter"):
            body["filter"] = _json(GrpcToRest.convert_filter(request.filter))
        if request.HasField("limit"):
            body["limit"] = request.limit
        if request.HasField("offset"):
            body["offset"] = GrpcToRest.convert_point_id(request.offset)
        page = self.calls(context, self.double._scroll, request.collection_name, body)
        reply = grpc.ScrollResponse(result=[_record(r) for r in page.points])
        if page.next_page_offset is not None:
            reply.next_page_offset.CopyFrom(RestToGrpc.convert_extended_point_id(page.next_page_offset))
        return reply

    def Query(self, request, context):
        body = _json(GrpcToRest.convert_query_points(request))
        response = self.calls(context, self.double._query, request.collection_name, body)
        return grpc.QueryResponse(result=[RestToGrpc.convert_scored_point(p) for p in response.points])

    def CreateFieldIndex(self, request, context):
        field_type = grpc.FieldType.Name(request.field_type)  # e.g. FieldTypeKeyword
        body = {"field_name": request.field_name, "field_schema": field_type.removeprefix("FieldType").lower()}
        return _updated(self.calls(context, self.double._create_index, request.collection_name, body))


def serve_grpc(double: QdrantRestDouble, port: int = 0) -> tuple[grpc_lib.Server, int]:
    """Start the gRPC face of `double` on 127.0.0.1:`port` (0: any free port)."""
    server = grpc_lib.server(futures.ThreadPoolExecutor(max_workers=8))
    calls = _Calls(double)
    grpc.add_QdrantServicer_to_server(_Qdrant(calls), server)
    grpc.add_CollectionsServicer_to_server(_Collections(calls), server)
    grpc.add_PointsServicer_to_server(_Points(calls), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound
