"""Two JSON views over the cached reads."""

from __future__ import annotations

from django.http import Http404, HttpRequest, JsonResponse

from . import reads


def front_page(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"articles": reads.latest()})


def article(request: HttpRequest, pk: int) -> JsonResponse:
    found = reads.article(pk)
    if found is None:
        raise Http404("no such article")
    return JsonResponse(found)
