from django.http import HttpRequest, HttpResponse
from django.urls import path
from oauth2_provider.views import TokenView


def ready(_request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("token", TokenView.as_view(), name="token"),
    path("ready", ready, name="ready"),
]
