"""Seed the bench: one public application and N (user, access token, refresh token) triples.

Prints one JSON line: ``{"client_id": ..., "refresh_tokens": [...]}``.
"""

import json
import uuid
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone
from oauth2_provider.models import AccessToken, Application, RefreshToken
from oauthlib.common import generate_token

REDIRECT_URI = "http://127.0.0.1:9/callback"


class Command(BaseCommand):
    help = "Seed one public application and refresh tokens for the token endpoint bench."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--chains", type=int, required=True)
        parser.add_argument("--client-id", default="bench-app")

    def handle(self, *args: object, **options: object) -> None:
        chains = int(options["chains"])  # type: ignore[call-overload]
        user_model = get_user_model()
        now = timezone.now()
        with transaction.atomic():
            application = Application.objects.create(
                name="bench",
                client_id=str(options["client_id"]),
                client_type=Application.CLIENT_PUBLIC,
                authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
                redirect_uris=REDIRECT_URI,
                client_secret="",
                hash_client_secret=False,
            )
            users = [user_model(username=f"patient{i}") for i in range(chains)]
            for user in users:
                user.set_unusable_password()  # token owners only: nobody logs in
            users = user_model.objects.bulk_create(users)
            access_tokens = AccessToken.objects.bulk_create(
                [
                    AccessToken(
                        user=user,
                        application=application,
                        token=generate_token(),
                        expires=now + timedelta(minutes=5),
                        scope="read",
                    )
                    for user in users
                ]
            )
            refresh_tokens = RefreshToken.objects.bulk_create(
                [
                    RefreshToken(
                        user=access_token.user,
                        application=application,
                        access_token=access_token,
                        token=generate_token(),
                        token_family=uuid.uuid4(),
                    )
                    for access_token in access_tokens
                ]
            )
        self.stdout.write(
            json.dumps(
                {
                    "client_id": application.client_id,
                    "refresh_tokens": [token.token for token in refresh_tokens],
                }
            )
        )
