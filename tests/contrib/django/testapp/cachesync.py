"""Declarations for models this app does not own, discovered by the cachesync app at start-up."""

from django.contrib.auth.models import User

from cachesync.contrib.django import register

from .models import Article

register(User, keys=["user:{pk}", "user:by-name:{username}"])
register(Article.tags.through, keys=["article:{article_id}:tags", "tag:{tag}:articles"])
